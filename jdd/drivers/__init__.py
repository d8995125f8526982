"""One driver per family, side by side; none imports another (`jdd.run` picks one per method).

A driver module provides

    check(config)          fast checks before any data is read (raise ValueError/FileNotFoundError)
    load_data(config)      the dataset (a missing one stops the run at once, saying where to put it)
    run(ctx) -> dict       every stage in order, each skipped or resumed from what the workdir holds
    print_summary(results) the table a user reads at the end

`jdd.run.run` does the rest once for all of them: config.json, the mesh, the header line, the
run context, results.json and the wall time.
"""
