"""ContractExampleGen: ingests a hybrid-sample contract dataset into canonical tf.Examples."""
