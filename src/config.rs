//! Command line and config file. TODO.
