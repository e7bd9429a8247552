"""Faults with real processes on 127.0.0.1: the API killed or stopped mid training run (test_api_restart),
the database unreachable under a running server (test_database_outage), answers lost under concurrent load
(test_load), two API processes on one PostgreSQL and one Redis serving one client in turn
(test_two_servers). A worker killed mid-job is
tests/jobs/test_recovery.py::test_killed_worker_resumes_from_its_checkpoint, on both executors;
bench/reliability.py runs it with these."""
