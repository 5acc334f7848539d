"""The exit statuses of `pipeline/sweep.py`, which a shell or a CI job can trust: 0 every trial
completed or was stopped by the scheduler or the budget; 1 a trial ended in an error (the
summary names it); 2 a configuration error before any trial (or a tracking server that does
not answer); 130 interrupted (Ctrl-C, SIGTERM) before every trial ended."""

EXIT_ERROR, EXIT_CONFIG, EXIT_INTERRUPTED = 1, 2, 130
