package netpolicy

// BreakNflogReader closes the socket of n's NFLOG reader under it, as a
// failing reader would see it. For the lab tests only.
func BreakNflogReader(n *Network) error { return n.nf.nf.Con.Close() }
