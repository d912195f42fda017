"""What every work-item handler works with: the node's configuration and credentials, the platform
client, the ledger, the stop flag, the local data (read once per study and file version) and the
items to skip in the long-poll. The daemon (daemon.Node) is one; the handlers take it as ``ctx``."""

from __future__ import annotations

import threading
import time
from typing import Any

from fedproto.datasets import dataset_for
from fedproto.study import StudyConfig

from .client import PlatformClient
from .config import NodeConfig
from .credentials import Credentials
from .data import Dataset, load_study_data
from .errors import DataError, MissingDataset
from .ledger import Ledger, config_sha256


class NodeContext:
    def __init__(self, cfg: NodeConfig, creds: Credentials, client: PlatformClient | None = None,
                 ledger: Ledger | None = None):
        self.cfg = cfg
        self.creds = creds
        self.client = client or PlatformClient(cfg.platform_url, creds.node_token, cfg.request_timeout_s)
        self.ledger = ledger or Ledger(cfg.ledger)
        self.stop = threading.Event()
        self._data_cache: dict[int, tuple[tuple, Dataset]] = {}
        self.logged_pending: set[int] = set()  # studies whose "waiting for the admin" was logged
        self.deferred: dict[str, float] = {}  # item key -> monotonic time until which it is skipped
        (cfg.work_dir / "frames").mkdir(parents=True, exist_ok=True)

    def dataset_name(self, study: StudyConfig) -> str:
        """The name of the data set ``study`` uses on this hospital's node (fedproto.datasets)."""
        return dataset_for(study.datasets, self.creds.hospital_id)

    def dataset_path(self, study: StudyConfig):
        """The file of the study's data set; MissingDataset when this node's config does not name it."""
        name = self.dataset_name(study)
        if name not in self.cfg.datasets:
            known = ", ".join(sorted(self.cfg.datasets)) or "none"
            raise MissingDataset(f"study {study.study_id} uses the data set {name!r}, which this node's config "
                                 f"{self.cfg.path} does not name (known: {known}): add [datasets.{name}] path = "
                                 "\"...\" to use it", name=name)
        return self.cfg.datasets[name]

    def dataset(self, study: StudyConfig) -> Dataset:
        """The local data of ``study`` (its named data set), read again only when the file or the study changed."""
        path = self.dataset_path(study)
        try:
            st = path.stat()
            key: tuple = (str(path), st.st_mtime_ns, st.st_size, config_sha256(study))
        except FileNotFoundError:
            raise DataError(f"data file {path} does not exist: set [data] csv (or [datasets.default] path) in "
                            f"{self.cfg.path}",
                            public="the node's data file does not exist") from None
        from .statistics_round import global_statistics  # it needs this module (and the keys)

        stats = global_statistics(self, study)
        key = (*key, stats is not None and not stats.get("provisional"))
        hit = self._data_cache.get(study.study_id)
        if hit and hit[0] == key:
            return hit[1]
        ds = load_study_data(study, path, stats)
        self._data_cache[study.study_id] = (key, ds)
        return ds

    def known_study(self, sid: int) -> StudyConfig:
        """The study as this node last stored it (from an invitation or a job)."""
        study = self.ledger.study_config(sid)
        if study is None:
            raise RuntimeError(f"study {sid} is unknown to this node (no invitation or job seen yet)")
        return study

    def defer(self, item: dict[str, Any], seconds: float) -> None:
        """Ask the platform not to return this item for a while (it cannot be acted on now)."""
        key = item.get("key") if isinstance(item, dict) else None
        if isinstance(key, str):
            self.deferred[key] = time.monotonic() + seconds
