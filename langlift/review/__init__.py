"""Native-speaker review: a local page where reviewers judge base against fine-tuned answers
(:mod:`langlift.review.app`), their judgements stored one JSON line per click (:mod:`langlift.review.store`),
and folded into ``metrics/human.json`` and training records (:mod:`langlift.review.fold`)."""
