"""`python -m job_operator` is the `job-operator` command."""

from job_operator.cli import main

main()
