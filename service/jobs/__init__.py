"""Meta-training jobs: the spec, the runner and who runs it.

    api/jobs.py → jobs/service.py (the job row) → an executor → a job process → jobs/runner.py:run_job
        → metatrain/ (meta_train, evaluate) → registry/service.py (the version, linked to the job)

spec.py        JobSpec, validated at submission, stored in the job row
price.py       a spec's memory and compute, estimated and checked against the limits at submission
service.py     submit, read, list, cancel (what the API calls)
repository.py  every job query, each state change one conditional UPDATE
runner.py      run_job: one job from its row to a published version; leases, resume, cancellation
lease.py       lease owner ids, and whether an owner is certainly gone
process.py     one job in a child process: memory cap, lifeline, cancel and stop bounded by a kill
forkserver.py  what the job processes' forkserver loads once
executor.py    which executor the settings ask for
embedded.py    the polling loop (SQLite default) the API shares with `l2o worker`; it starts job processes
queue.py       procrastinate: dispatch, the worker, stalled-job recovery
worker.py      the `l2o worker` entry point
"""
