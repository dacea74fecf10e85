"""The study on Ray: the only subpackage that imports `ray`. The Tuner and its driver (`driver`),
the searcher (`searcher`), one Tune trial (`trial_fn`), Ray Train jobs (`jobs`), starting Ray
(`launch`), forked branches (`forking`), shared storage and the run lock (`storage`), the checks
before Ray starts (`preflight`) and the pretrained arm's weights (`weights`). `driver` and
`searcher` import Ray when imported; the others only inside the functions that start Ray jobs."""
