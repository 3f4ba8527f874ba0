"""IKE (ISAKMP/Oakley, IKEv1): the key exchange component of ipsecd."""
