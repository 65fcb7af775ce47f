//! Fixtures shared by the tests of several berth crates. Used only as a dev-dependency;
//! like test code, it panics (with what to install) when a fixture cannot be set up.

pub mod registry;
