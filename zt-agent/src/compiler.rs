//! Pure compiler: cluster state ─▶ desired datapath state.
