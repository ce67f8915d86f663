"""Scale-out: device meshes from the config, logical-axis rules, sharded state, multi-host start-up,
and the memory planner. Model modules only name logical axes; everything mesh-specific is here."""
