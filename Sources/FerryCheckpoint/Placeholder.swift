// The checkpoint coordinator.
