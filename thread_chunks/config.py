"""Defaults used when an option is not given (the thread-chunks 1.0.5 names).

Change them at run time, before the call that should see them::

    import thread_chunks
    thread_chunks.config.default_chunk_size = 4
    thread_chunks.config.ray_config = {"num_cpus": 4, "object_store_memory": 2 * 1024**3}
    thread_chunks.config.progress_bar = False
"""

from __future__ import annotations

import os
from typing import Any

default_chunk_size: int = os.cpu_count() or 1
"""How many calls run at once unless ``chunk_size`` is given: the machine's CPU count."""

ray_config: dict[str, Any] = {"num_cpus": default_chunk_size}
"""Keyword arguments for ``ray.init`` when thread-chunks starts Ray itself.

Never used when Ray is already running or when ``RAY_ADDRESS`` points at a cluster."""

progress_bar: bool = True
"""Whether a progress bar is shown on stderr unless ``progress_bar`` is given."""

checkpoint_filesystem: str = "auto"
"""What the filesystem holding a checkpoint is: ``"auto"`` (told by its type: NFS, Lustre,
GPFS, BeeGFS, CIFS/SMB, Ceph, sshfs... are network filesystems), ``"local"`` or ``"network"``
(say it where the type cannot tell, e.g. a FUSE mount of shared storage). On a network
filesystem a checkpoint is written without SQLite's WAL shared memory (see "Running on an HPC
cluster" in the docs)."""
