import dagster as dg

# One recording is one partition key: the unit of work, retry, status and cost.
recordings_partitions = dg.DynamicPartitionsDefinition(name="recordings")
