"""Chain plugins behind one interface (Bitcoin, Ethereum), registered through the
`custody.chains` entry-point group. Arrives with the chain plugin issue."""
