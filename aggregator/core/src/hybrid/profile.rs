//! Performance profiles: placeholder, being written.
