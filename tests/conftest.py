pytest_plugins = ["lxcone.testing.fixtures"]
