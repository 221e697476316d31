"""One module per `pam` subcommand; see pam.cli for the contract."""
