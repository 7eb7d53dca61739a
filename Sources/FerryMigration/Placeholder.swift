// The migration protocol.
