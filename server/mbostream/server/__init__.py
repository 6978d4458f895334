"""Server room: the gRPC edge (services, error mapping, auth) and the application wiring."""
