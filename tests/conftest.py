pytest_plugins = ["tests.services.kafka", "tests.services.clickhouse", "tests.services.clickhouse_cluster"]
