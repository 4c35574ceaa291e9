"""Applied family: domain adaptation and transfer learning scored by target accuracy (DASPOT, DeepJDOT, POT's
ot.da transports, W1-prior transfer) against source-only, oracle and non-OT baselines."""
