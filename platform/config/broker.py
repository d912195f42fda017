"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file (no server needed).

kombu's transport polls once a second by default and hands every transport option to
create_engine (so `polling_interval` cannot be passed as one); this subclass polls every 20 ms so
round orchestration stays fast on the embedded default (a poll of the idle queue table is ~0.1 ms).
"""

from kombu.transport import sqlalchemy as kombu_sqla


class Transport(kombu_sqla.Transport):
    polling_interval = 0.02
