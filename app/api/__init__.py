"""HTTP layer: routers, dependencies, error mapping. Routes are thin; services do the work."""
