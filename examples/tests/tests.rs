//! The camera apps' integration tests: one binary, one module per concern,
//! each running a built app on a camera-less source. (`ci/check_examples`
//! runs every app end to end and reads their screens back.)

mod resume;
