"""Meta-training jobs: the spec, the runner and who runs it.

    api/jobs.py → jobs/service.py (the job row) → an executor → jobs/runner.py:run_job
        → metatrain/ (meta_train, evaluate) → registry/service.py (the version, linked to the job)

spec.py        JobSpec, validated at submission, stored in the job row
service.py     submit, read, list, cancel (what the API calls)
repository.py  every job query, each state change one conditional UPDATE
runner.py      run_job: one job from its row to a published version; leases, resume, cancellation
lease.py       lease owner ids, and whether an owner is certainly gone
executor.py    which executor the settings ask for
embedded.py    the background thread (SQLite default) and the polling loop it shares with `l2o worker`
queue.py       procrastinate: dispatch, the worker, stalled-job recovery
worker.py      the `l2o worker` entry point
"""
