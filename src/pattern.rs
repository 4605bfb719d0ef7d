//! The test pattern code: frame counter and capture time written as blocks. TODO.
