"""ipsecd: the Windows Server 2003 IPsec architecture as a userspace daemon.

Three components, named as the source documents name them: the Policy Agent
(policy stores, polling, cache), IKE (ISAKMP/Oakley main mode and quick mode,
NAT-T) and the IPsec driver (SPD, SAD, ESP and AH). See docs/ARCHITECTURE.md.
"""
