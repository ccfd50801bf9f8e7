//! The node agent: Services and endpoints compiled to datapath map contents, Maglev tables.
