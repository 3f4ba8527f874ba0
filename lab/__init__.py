"""lab: bring ipsec-lab topologies up in Docker, drive traffic, assert on captures."""
