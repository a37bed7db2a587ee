//! The committed reference fixtures (scripts/fixtures/<name>/reference.safetensors
//! and reference.json) as the tests read them.
#![allow(dead_code)] // each test file uses some of these

use std::path::PathBuf;

use ndarray::Array2;
use safetensors::SafeTensors;

pub struct Fixture {
    bytes: Vec<u8>,
    pub json: serde_json::Value,
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures").join(name);
        Fixture {
            bytes: std::fs::read(dir.join("reference.safetensors")).unwrap(),
            json: serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap(),
        }
    }

    fn raw(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        (t.shape().to_vec(), t.data().to_vec())
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.raw(name).0
    }

    pub fn f64s(&self, name: &str) -> Vec<f64> {
        self.raw(name).1.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
    }

    /// An int64 tensor as indices.
    pub fn usizes(&self, name: &str) -> Vec<usize> {
        self.raw(name).1.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize).collect()
    }

    pub fn matrix(&self, name: &str) -> Array2<f64> {
        let shape = self.shape(name);
        Array2::from_shape_vec((shape[0], shape[1]), self.f64s(name)).unwrap()
    }
}
