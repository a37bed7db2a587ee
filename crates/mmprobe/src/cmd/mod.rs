pub mod analysis;
pub mod datasets;
pub mod doctor;
pub mod extract;
pub mod inspect;
pub mod report;
