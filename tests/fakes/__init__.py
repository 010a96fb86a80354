"""Stand-ins for the processes Berth talks to, for unit tests."""
