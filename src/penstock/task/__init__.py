"""Tasks: the mailbox loop, operator chains and the operators that run in them."""
