"""The torch-free launching side: the Hydra app (app), bnbench's sweeper and its plan (sweeper,
planning: which runs are finished, which seeds stack, which jobs run), the machine's shares
(resources), the sweep callback and its live view (sweep, progress), and the one channel
between the CLI and its jobs (channel). A test checks that importing it loads neither torch nor
pandas: a sweep's first job starts without paying for them."""
