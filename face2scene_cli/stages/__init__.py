"""The restoration stages: face restorers (Stage I), FaDeX and MapNet (degradation oracle)."""
