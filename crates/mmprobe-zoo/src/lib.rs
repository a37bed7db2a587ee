//! Synthetic concept datasets with known ground truth, and the toy models
//! trained on them.
