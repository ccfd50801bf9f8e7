//! Property tests: the loader never panics, whatever bytes or YAML it is given.

mod props;
