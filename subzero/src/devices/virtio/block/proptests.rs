//! Property tests: arbitrary chains never break the device.
