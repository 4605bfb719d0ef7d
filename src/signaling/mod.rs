//! Signaling: protocol types and the session state machine. TODO.
