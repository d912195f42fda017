"""Settings for the platform. Every deployment knob is an environment variable (see README)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent          # platform/
REPO_DIR = BASE_DIR.parent
if str(REPO_DIR) not in sys.path:                           # fedproto/ lives at the repo root
    sys.path.insert(0, str(REPO_DIR))

VAR_DIR = Path(os.environ.get("FEDPLATFORM_VAR_DIR", REPO_DIR / "var")).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
_secret = os.environ.get("DJANGO_SECRET_KEY")
if not _secret:
    # Local/dev default: a random key kept in var/ (never in the repo). Production sets the env var.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        import secrets

        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    _secret = key_file.read_text().strip()
SECRET_KEY = _secret
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "audit",
    "consortia",
    "studies",
]
if os.environ.get("FEDPLATFORM_PORTAL", "1") == "1":
    try:
        import portal  # noqa: F401
    except ImportError:
        pass
    else:
        INSTALLED_APPS.append("portal")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "config.wsgi.application"

# Database: DATABASE_URL when set (PostgreSQL in production and tests), SQLite otherwise.
if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=0)}
    # The web process (config.wsgi turns this on) keeps its PostgreSQL connections in a pool:
    # every node request used to open and close one (a new PostgreSQL backend each, ~4 ms idle and
    # more under load, on the path of every long-poll wake-up). Node views use at most
    # FEDPLATFORM_WEB_DB_SLOTS (16) at once; the rest is for the portal. Celery workers (forked
    # processes) and management commands keep plain connections.
    # application_name lets pg_stat_activity tell the web pool's connections from the rest.
    if os.environ.get("FEDPLATFORM_DB_POOL", "0") == "1":
        DATABASES["default"].setdefault("OPTIONS", {}).update(application_name="fedplatform-web", pool={
            "min_size": 2, "max_size": int(os.environ.get("FEDPLATFORM_DB_POOL_MAX", "24")), "timeout": 30})
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("FEDPLATFORM_SQLITE", str(VAR_DIR / "platform.sqlite3")),
            "OPTIONS": {
                # Several processes (web, Celery worker) share the file: WAL + immediate
                # transactions avoid "database is locked" on lock upgrades.
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = 8 * 3600
CSRF_COOKIE_SAMESITE = "Lax"
_secure = os.environ.get("DJANGO_SECURE_COOKIES", "0") == "1"
SESSION_COOKIE_SECURE = _secure
CSRF_COOKIE_SECURE = _secure
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise serves app static files through finders; keep it quiet
MEDIA_ROOT = Path(os.environ.get("FEDPLATFORM_MEDIA_ROOT", VAR_DIR / "media"))
WHITENOISE_USE_FINDERS = True

# Uploads: stream large bodies to disk, cap sizes.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
MAX_UPDATE_BYTES = int(os.environ.get("FEDPLATFORM_MAX_UPDATE_BYTES", str(2 * 1024 ** 3)))
# Ciphertext parts per aggregation chunk: a round whose uploads have more parts is aggregated by
# several Celery tasks (one per chunk), so several workers share a large model.
AGGREGATE_CHUNK_PARTS = int(os.environ.get("FEDPLATFORM_AGGREGATE_CHUNK_PARTS", "64"))
MAX_MODEL_BYTES = int(os.environ.get("FEDPLATFORM_MAX_MODEL_BYTES", str(512 * 1024 ** 2)))

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "EXCEPTION_HANDLER": "studies.api.errors.exception_handler",
    # JSON bodies with NaN/Infinity or a number beyond float range are a 422 (the audit trail cannot record them).
    "DEFAULT_PARSER_CLASSES": ["studies.api.parsers.StrictJSONParser", "rest_framework.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Federated hospital platform API",
    "DESCRIPTION": "Study management (researchers) and the hospital node protocol (see docs/PROTOCOL.md).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
}

# Celery: REDIS_URL when set; an embedded broker (SQLite through kombu's SQLAlchemy transport,
# no server needed) otherwise.
REDIS_URL = os.environ.get("REDIS_URL")
CELERY_BROKER_URL = REDIS_URL or f"sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}"
if not REDIS_URL:
    CELERY_BROKER_TRANSPORT = "config.broker:Transport"
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ALWAYS_EAGER = os.environ.get("CELERY_TASK_ALWAYS_EAGER", "0") == "1"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "reconcile-studies": {
        "task": "studies.reconcile",
        "schedule": float(os.environ.get("FEDPLATFORM_RECONCILE_S", "5")),
    },
    # Summary events of repeated failed logins / refused enrolments whose window has closed.
    "audit-summaries": {"task": "audit.flush_summaries", "schedule": 60.0},
}

# How long a node long-poll may hold a request open, and how often it looks for work.
NODE_LONGPOLL_MAX_S = 30
# A train item carries the previous round's aggregate when it is at most this size (saves the node a
# request per round on small models; larger ones are fetched from the aggregate endpoint). 0 = never.
NODE_INLINE_AGGREGATE_MAX_BYTES = int(os.environ.get("FEDPLATFORM_INLINE_AGGREGATE_MAX_BYTES", str(256 * 1024)))
NODE_LONGPOLL_TICK_S = float(os.environ.get("FEDPLATFORM_LONGPOLL_TICK_S", "0.1"))
NODE_ONLINE_WINDOW_S = 90

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("FEDPLATFORM_LOG_LEVEL", "INFO")},
    "loggers": {"django.server": {"level": "WARNING"}, "weasyprint": {"level": "WARNING"},
                "fontTools": {"level": "WARNING"}},
}
