"""Domain generalization: the ``domain_generalization`` protocol (:mod:`.protocol`) and its
methods (``DG_METHODS``, one module each), the rivals of catK on DomainBed's
leave-one-domain-out."""
