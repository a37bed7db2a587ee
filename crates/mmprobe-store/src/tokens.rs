//! `tokens.parquet`: what each `all` row's position holds.

use std::path::Path;

use polars::prelude::*;

use crate::error::{Result, pq};
use crate::layout::TOKENS;
use crate::names::Tower;
use crate::store::write_parquet;

#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub sample: u32,
    pub tower: Tower,
    pub pos: i32,
    /// Vocabulary id; none for image patches.
    pub token_id: Option<i64>,
    pub token: String,
    /// `image` or `text`.
    pub modality: &'static str,
    /// Image positions of families that report it: the image grid cell
    /// (row, col, t), after merging where the model merges (a decoder's image
    /// token), else the patch cell (a vision tower's row). Written as the
    /// nullable columns `grid_row`, `grid_col`, `grid_t`.
    pub grid: Option<(i32, i32, i32)>,
}

pub fn write_tokens(root: &Path, rows: &[TokenRow]) -> Result<()> {
    let path = root.join(TOKENS);
    let mut df = DataFrame::new(
        rows.len(),
        vec![
            Column::new("sample".into(), rows.iter().map(|r| r.sample).collect::<Vec<_>>()),
            Column::new("tower".into(), rows.iter().map(|r| r.tower.as_str()).collect::<Vec<_>>()),
            Column::new("pos".into(), rows.iter().map(|r| r.pos).collect::<Vec<_>>()),
            Column::new("token_id".into(), rows.iter().map(|r| r.token_id).collect::<Vec<_>>()),
            Column::new("token".into(), rows.iter().map(|r| r.token.as_str()).collect::<Vec<_>>()),
            Column::new("modality".into(), rows.iter().map(|r| r.modality).collect::<Vec<_>>()),
            Column::new("grid_row".into(), rows.iter().map(|r| r.grid.map(|g| g.0)).collect::<Vec<_>>()),
            Column::new("grid_col".into(), rows.iter().map(|r| r.grid.map(|g| g.1)).collect::<Vec<_>>()),
            Column::new("grid_t".into(), rows.iter().map(|r| r.grid.map(|g| g.2)).collect::<Vec<_>>()),
        ],
    )
    .map_err(pq(&path))?;
    write_parquet(&path, &mut df)
}
