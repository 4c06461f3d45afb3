pytest_plugins = ["tests.services.kafka", "tests.services.clickhouse"]
