"""callplane's provisioning plane: the Pulumi program, its config schema, the country rules
table and the dynamic providers. ``infra/__main__.py`` is the program; see infra/README.md."""
