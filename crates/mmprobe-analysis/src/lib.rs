//! Probes with cross-validated statistics, concept directions, cross-modal
//! geometry and erasure, computed on an activation store. Never links LibTorch.
