//! Data for benches, demos and imports: a generated workload and a reader for real CSV files.
//!
//! - [`price_paid`] generates the project's standard workload, a UK land-registry "price paid"-
//!   shaped data set: by default 106,178 records of 16 quoted CSV fields, about 17 MB, keyed by a
//!   `{GUID}` transaction identifier and byte-identical for a given seed on every machine.
//! - [`csv_import`] reads CSV files into `(key, value)` rows for `pagemesh import --csv`: the key
//!   is one column, the value the record's own bytes, and every bad row is reported with its line
//!   number instead of being dropped.
//!
//! The generator's output read back through the importer gives back exactly its keys and lines:
//!
//! ```
//! use pagemesh_tools::workload::csv_import::read_rows;
//! use pagemesh_tools::workload::price_paid::PricePaid;
//!
//! let set = PricePaid::new(42, 100);
//! let mut csv = Vec::new();
//! set.write_csv(&mut csv)?;
//! let rows = read_rows(csv.as_slice(), 0, false).collect::<Result<Vec<_>, _>>()?;
//! for (row, record) in rows.iter().zip(&set) {
//!     assert_eq!(row.key, record.key);
//!     assert_eq!(row.value, record.line.as_bytes());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod csv_import;
pub mod price_paid;

pub use csv_import::{read_rows, ImportRow, RowError, Rows};
pub use price_paid::{PricePaid, PricePaidRecord};
