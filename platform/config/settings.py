"""Settings for the platform. Every deployment knob is an environment variable, read here and
nowhere else, through the typed readers of config/env.py: a bad value stops every process at
start-up with an error naming the variable. The README's environment table and
deploy/env.example list them all, with their defaults."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from .env import envbool, envfloat, envint, envlist, envstr

BASE_DIR = Path(__file__).resolve().parent.parent          # platform/
REPO_DIR = BASE_DIR.parent

# Relative paths in the environment are taken from the repository root, not from the working
# directory (which differs between manage.py, gunicorn --chdir and the Celery worker).
VAR_DIR = (REPO_DIR / envstr("FEDPLATFORM_VAR_DIR", "var")).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = envbool("DJANGO_DEBUG", False)
_secret = envstr("DJANGO_SECRET_KEY", "", secret=True)
if not _secret:
    # Local/dev default: a random key kept in var/ (never in the repo). Production sets the env var.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        import secrets

        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    _secret = key_file.read_text().strip()
SECRET_KEY = _secret
ALLOWED_HOSTS = envlist("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = envlist("DJANGO_CSRF_TRUSTED_ORIGINS", [], item_pattern=r"https?://\S+",
                               accepts="an origin with its scheme, e.g. https://platform.example.org")

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
    "reports",
]
if envbool("FEDPLATFORM_PORTAL", True):
    try:
        import portal  # noqa: F401
    except ImportError:
        pass
    else:
        INSTALLED_APPS.append("portal")
        PORTAL_CONTEXT = ["portal.context_processors.portal"]
        # A refused CSRF check shows the portal's page, which keeps what was typed (portal/views/errors.py).
        CSRF_FAILURE_VIEW = "portal.views.errors.csrf_failure"
        # Django admin's login then goes through the portal's throttle and audit (config/admin_site.py).
        INSTALLED_APPS[INSTALLED_APPS.index("django.contrib.admin")] = "config.apps.PlatformAdminConfig"
PORTAL_CONTEXT = locals().get("PORTAL_CONTEXT", [])
if importlib.util.find_spec("devstack") is not None:  # the dev harness (`manage.py demo`): not in the production image
    INSTALLED_APPS.append("devstack")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.apierrors.ApiJsonErrorsMiddleware",
    "config.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
if "portal" in INSTALLED_APPS:
    # A bare 405 (a plain view refusing a method) gets the portal's error page outside /api/.
    MIDDLEWARE.append("portal.middleware.ErrorPagesMiddleware")

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
                *PORTAL_CONTEXT,
            ],
        },
    },
]
WSGI_APPLICATION = "config.wsgi.application"

# Database: DATABASE_URL when set (PostgreSQL in production and tests), SQLite otherwise.
_database_url = envstr("DATABASE_URL", "", secret=True)
if _database_url:
    try:
        DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=0)}
    except (ValueError, KeyError) as exc:  # unknown scheme, bad port: the URL itself may hold a password
        raise ImproperlyConfigured(
            f"environment variable DATABASE_URL is not valid ({exc.__class__.__name__}): expected e.g. "
            "postgres://USER:PASSWORD@HOST:5432/NAME; unset it to use SQLite in FEDPLATFORM_VAR_DIR") from None
    # The web process (config.wsgi turns this on) keeps its PostgreSQL connections in a pool:
    # every node request used to open and close one (a new PostgreSQL backend each, on the path of
    # every long-poll wake-up; docs/benchmarks.md has the numbers). Node views use at most
    # FEDPLATFORM_WEB_DB_SLOTS (16) at once; the rest is for the portal. Celery workers (forked
    # processes) and management commands keep plain connections.
    # application_name lets pg_stat_activity tell the web pool's connections from the rest.
    # FEDPLATFORM_DB_POOL is set by config/wsgi.py for the web process only (see there).
    # A pooled connection is checked before it is lent (one round trip): after a PostgreSQL restart
    # the idle ones are dead, and each used to fail a request (see config/postgresql/base.py).
    if envbool("FEDPLATFORM_DB_POOL", False):
        DATABASES["default"].setdefault("OPTIONS", {}).update(application_name="fedplatform-web", pool={
            "min_size": 2, "max_size": envint("FEDPLATFORM_DB_POOL_MAX", 24, lo=2, hi=1000), "timeout": 30})
        if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
            DATABASES["default"]["ENGINE"] = "config.postgresql"  # the same, with a pool that recovers at once
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(REPO_DIR / envstr("FEDPLATFORM_SQLITE", str(VAR_DIR / "platform.sqlite3"))),
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
# Served over HTTPS behind the reverse proxy (deploy/): the proxy terminates TLS and says so in
# X-Forwarded-Proto (it must overwrite any value a client sends). Then plain-http requests are
# redirected, browsers are told to use HTTPS only (HSTS) and cookies are Secure.
HTTPS = envbool("DJANGO_HTTPS", False)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Container and load-balancer health checks talk plain http to the web server itself.
    SECURE_REDIRECT_EXEMPT = [r"^api/health/$"]
SECURE_HSTS_SECONDS = envint("DJANGO_HSTS_SECONDS", 365 * 24 * 3600, lo=0, hi=2 * 365 * 24 * 3600) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = envbool("DJANGO_HSTS_PRELOAD", False)
if not SECURE_HSTS_PRELOAD:
    # Preloading is a commitment the operator makes for the whole domain (hstspreload.org): opt in
    # with DJANGO_HSTS_PRELOAD=1; without it `check --deploy` need not ask for it.
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
_secure = envbool("DJANGO_SECURE_COOKIES", HTTPS)
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
MEDIA_ROOT = REPO_DIR / envstr("FEDPLATFORM_MEDIA_ROOT", str(VAR_DIR / "media"))
WHITENOISE_USE_FINDERS = True

# Uploads: stream large bodies to disk, cap sizes.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
MAX_UPDATE_BYTES = envint("FEDPLATFORM_MAX_UPDATE_BYTES", 2 * 1024 ** 3, lo=1)
MAX_MODEL_BYTES = envint("FEDPLATFORM_MAX_MODEL_BYTES", 512 * 1024 ** 2, lo=1)
# Ciphertext parts per aggregation chunk: a round whose uploads have more parts is aggregated by
# several Celery tasks (one per chunk), so several workers share a large model.
AGGREGATE_CHUNK_PARTS = envint("FEDPLATFORM_AGGREGATE_CHUNK_PARTS", 64, lo=1)
# Aggregations of at most this many ciphertext part loads (uploads x parts) run in the task that
# closed the round (one broker hop less per round); bigger ones get their own task(s).
INLINE_AGGREGATE_MAX_PART_LOADS = envint("FEDPLATFORM_INLINE_AGGREGATE_MAX", 64, lo=0)
# A round still aggregating this long after it closed is taken for lost (its worker died) and is
# aggregated again by the reconciler (studies/tasks.py). Too short only repeats work: keep it above
# the time a normal aggregation takes.
AGGREGATION_GRACE_S = envint("FEDPLATFORM_AGGREGATION_GRACE_S", 60, lo=1, hi=24 * 3600)
# Distributed DP: how long a secure-aggregation stage (key adverts, share bundles) waits for every
# hospital still in the round before it closes with the quorum (studies/services/secagg.py).
SECAGG_STAGE_S = envint("FEDPLATFORM_SECAGG_STAGE_S", 60, lo=1, hi=24 * 3600)

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Researchers: the portal's session, or a personal API token (Authorization: Bearer, studies/api/auth.py).
    "DEFAULT_AUTHENTICATION_CLASSES": ["studies.api.auth.ApiTokenAuthentication",
                                       "rest_framework.authentication.SessionAuthentication"],
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
REDIS_URL = envstr("REDIS_URL", "", pattern=r"(redis|rediss|unix)://\S+", secret=True,
                   accepts="a Redis URL such as redis://HOST:6379/0 (or rediss://, unix://)") or None
CELERY_BROKER_URL = REDIS_URL or f"sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}"
if not REDIS_URL:
    CELERY_BROKER_TRANSPORT = "config.broker:Transport"
elif REDIS_URL.startswith(("redis://", "rediss://")):
    # kombu's Redis transport, except that a worker survives a broker restart (config/broker.py).
    CELERY_BROKER_TRANSPORT = "config.broker:RedisTransport"
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A lost broker connection is retried for ever (a worker that gives up leaves every study stuck).
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# Publishing (a web request enqueueing a task) fails fast when the broker is down: the state change
# is committed and the reconciler sends the follow-up (studies/services/common.py enqueue).
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
if REDIS_URL:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 2, "socket_timeout": 30}
CELERY_BEAT_SCHEDULE = {
    "reconcile-studies": {
        "task": "studies.reconcile",
        "schedule": envfloat("FEDPLATFORM_RECONCILE_S", 5.0, lo=0.1, hi=3600),
    },
    # Summary events of repeated failed logins / refused enrolments whose window has closed.
    "audit-summaries": {"task": "audit.flush_summaries", "schedule": 60.0},
}

# The node API. The longest a long-poll may hold a request open is part of the protocol
# (docs/PROTOCOL.md: wait at most 30 s), not a knob.
NODE_LONGPOLL_MAX_S = 30
# A waiting long-poll recomputes its node's work items when the work signal changes, and at least
# this often as a safety net (studies/worksignal.py).
NODE_LONGPOLL_RECHECK_S = envfloat("FEDPLATFORM_LONGPOLL_RECHECK_S", 15.0, lo=0.1, hi=300)
# How often each web process's watcher thread reads the work signal.
WORKSIGNAL_POLL_S = envfloat("FEDPLATFORM_WORKSIGNAL_POLL_S", 0.01, lo=0.001, hi=5)
# A train item carries the previous round's aggregate when it is at most this size (saves the node a
# request per round on small models; larger ones are fetched from the aggregate endpoint). 0 = never.
NODE_INLINE_AGGREGATE_MAX_BYTES = envint("FEDPLATFORM_INLINE_AGGREGATE_MAX_BYTES", 256 * 1024, lo=0, hi=64 * 1024 ** 2)
# Node requests that may use the database at once in one web process (studies/api/node.py).
WEB_DB_SLOTS = envint("FEDPLATFORM_WEB_DB_SLOTS", 16, lo=1, hi=1000)
# Enrolment attempts per client address (DRF throttle rate: N per second/minute/hour/day).
ENROL_RATE = envstr("FEDPLATFORM_ENROL_RATE", "30/min", pattern=r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)",
                    accepts="a rate like 30/min (N per s, min, hour or day)")
# A node counts as online when its last contact (heartbeat or work poll) is at most this old (nodes
# beat every 60 s by default): the portal shows it, a round does not wait for an offline node once
# its quorum is in, and an offline key custodian's final-model upload is asked of another key holder.
NODE_ONLINE_WINDOW_S = envint("FEDPLATFORM_NODE_ONLINE_WINDOW_S", 90, lo=5, hi=7 * 24 * 3600)

# Portal sign-in throttling (portal/auth.py): a (username, address) pair is locked for
# LOCK_MINUTES after MAX_FAILURES failures within WINDOW_MINUTES; a username from any address
# after MAX_FAILURES_PER_USER.
PORTAL_LOGIN_MAX_FAILURES = envint("FEDPLATFORM_LOGIN_MAX_FAILURES", 5, lo=1, hi=1000)
PORTAL_LOGIN_MAX_FAILURES_PER_USER = envint("FEDPLATFORM_LOGIN_MAX_FAILURES_PER_USER", 20, lo=1, hi=100_000)
PORTAL_LOGIN_WINDOW_MINUTES = envint("FEDPLATFORM_LOGIN_WINDOW_MINUTES", 15, lo=1, hi=7 * 24 * 60)
PORTAL_LOGIN_LOCK_MINUTES = envint("FEDPLATFORM_LOGIN_LOCK_MINUTES", 15, lo=1, hi=7 * 24 * 60)

# E-mail (invitations, password resets): Django's console backend (the message is printed in the
# web server's log) unless FEDPLATFORM_EMAIL_BACKEND says otherwise. `smtp` sends through
# FEDPLATFORM_SMTP_*; `file` writes each message to a file in FEDPLATFORM_EMAIL_FILE_PATH.
_email_backends = {"console": "django.core.mail.backends.console.EmailBackend",
                   "smtp": "django.core.mail.backends.smtp.EmailBackend",
                   "file": "django.core.mail.backends.filebased.EmailBackend",
                   "none": "django.core.mail.backends.dummy.EmailBackend"}
EMAIL_BACKEND = _email_backends[envstr("FEDPLATFORM_EMAIL_BACKEND", "console", choices=tuple(_email_backends))]
EMAIL_FILE_PATH = str(REPO_DIR / envstr("FEDPLATFORM_EMAIL_FILE_PATH", str(VAR_DIR / "mail")))
EMAIL_HOST = envstr("FEDPLATFORM_SMTP_HOST", "localhost")
EMAIL_PORT = envint("FEDPLATFORM_SMTP_PORT", 25, lo=1, hi=65535)
EMAIL_HOST_USER = envstr("FEDPLATFORM_SMTP_USER", "")
EMAIL_HOST_PASSWORD = envstr("FEDPLATFORM_SMTP_PASSWORD", "", secret=True)
EMAIL_USE_TLS = envbool("FEDPLATFORM_SMTP_STARTTLS", False)
EMAIL_USE_SSL = envbool("FEDPLATFORM_SMTP_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("FEDPLATFORM_SMTP_STARTTLS and FEDPLATFORM_SMTP_SSL are exclusive: set one of them "
                               "(STARTTLS on port 587, SSL on port 465)")
EMAIL_TIMEOUT = envint("FEDPLATFORM_SMTP_TIMEOUT_S", 10, lo=1, hi=300)
DEFAULT_FROM_EMAIL = envstr("FEDPLATFORM_EMAIL_FROM", "fedplatform@localhost", pattern=r"[^@\s]+@[^@\s]+",
                            accepts="an e-mail address such as studies@hospital-consortium.org")
# Where the portal is published, for links in e-mails (e.g. https://studies.example.org); empty:
# the host the requesting person used.
PUBLIC_URL = envstr("FEDPLATFORM_PUBLIC_URL", "", pattern=r"https?://[^\s/]+(/\S*)?",
                    accepts="a URL with its scheme, e.g. https://studies.example.org").rstrip("/")
# The first-run page (/setup/) creates the first consortium and its admin while none exists. With
# this set, it also asks for this code (for an install reachable by others before it is set up).
SETUP_CODE = envstr("FEDPLATFORM_SETUP_CODE", "", secret=True)

# Written by a Celery worker once it consumes tasks (config/celery.py): the local stack and
# container health checks wait for it. Empty: not written.
WORKER_READY_FILE = envstr("FEDPLATFORM_WORKER_READY_FILE", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"],
             "level": envstr("FEDPLATFORM_LOG_LEVEL", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))},
    "loggers": {"django.server": {"level": "WARNING"}, "weasyprint": {"level": "WARNING"},
                "fontTools": {"level": "WARNING"}},
}
