"""Cluster mode (`--ray`): this process is the ingress, Ray Serve replicas do the generating.

The ingress keeps everything a client talks to: the API and UI, auth, request checks,
settings, model lists, progress, and saving the pictures. Each replica (`replica.py`) is
one Easel `Runtime` on one device (a GPU, or `--replica-threads` CPU threads) that runs one
job at a time. `dispatch.py` sends a generation (`messages.RemoteJob`: params, the settings
snapshot and its version, the checkpoint) to a replica chosen by Serve's model
multiplexing, follows its stream of progress events and retries once on another replica
when one dies. Stop requests reach the replica through `board.py`; pictures come back as
`saving.SaveRecord`s that the ingress writes. `start.py` starts or joins Ray and deploys.
Ray is imported only in this room, and this room only with `--ray`.
May import: pipeline, imaging, models, runtime, app.
"""
