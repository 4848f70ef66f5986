"""Training: one epoch loop (:mod:`.loop`) for every strategy (:mod:`.workers`, :mod:`.fused`,
:mod:`.plan`), the engines that train a run's members into its folder (:mod:`.engines`),
checkpoints, device and seeding."""
