"""The zchat broker: owns users and rooms, relays chat over ZeroMQ."""
